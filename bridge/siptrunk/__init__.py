"""The SIP trunk: PJSIP (pjsua2) in its own thread, calls from any PBX or carrier."""
