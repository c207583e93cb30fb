/* guid: not written yet */
