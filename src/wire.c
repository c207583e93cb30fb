/* wire: not written yet */
