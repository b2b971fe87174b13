"""Static files of the ops web page (served by bridge.ops.api)."""
