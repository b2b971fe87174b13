"""Asterisk transports: FastAGI, AudioSocket, ARI/Stasis with External Media (RTP, AudioSocket, chan_websocket), AMI."""
