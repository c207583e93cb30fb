/* credentials: not written yet */
