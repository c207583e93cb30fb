/* listener: not written yet */
