/* sdnotify: not written yet */
