/* bus: not written yet */
