/* tls: not written yet */
