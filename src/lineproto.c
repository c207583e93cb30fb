/* lineproto: not written yet */
