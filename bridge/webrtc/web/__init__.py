"""Static files of the browser phone page (served by bridge.webrtc.server)."""
