"""Frame transports. Importing this package registers every kind; vendor modules load lazily."""

from bridge.io.base import (
    Availability,
    FrameSink,
    FrameSource,
    create_sink,
    create_source,
    is_available,
    register_transport,
    transport_kinds,
)

register_transport("shm", "bridge.io.shared_memory", source_class="SharedMemorySource",
                   sink_class="SharedMemorySink", description="sdbridge shared-memory ring (any OS)")
register_transport("ndi", "bridge.io.ndi", source_class="NDISource", sink_class="NDISink",
                   description="NewTek/Vizrt NDI over the network (ndi-python)")
register_transport("spout", "bridge.io.spout", source_class="SpoutSource", sink_class="SpoutSink",
                   description="Spout GPU texture sharing (Windows, SpoutGL)")
register_transport("test_pattern", "bridge.io.test_pattern", source_class="TestPatternSource",
                   description="moving bars with a burned-in frame counter")
register_transport("image", "bridge.io.files", source_class="ImageSource",
                   description="a static image file, repeated")
register_transport("folder", "bridge.io.files", source_class="ImageFolderSource",
                   description="every image in a folder, in name order, looped")
register_transport("video", "bridge.io.files", source_class="VideoFileSource",
                   sink_class="VideoFileSink", description="video file (PyAV)",
                   availability="video_availability")
register_transport("png", "bridge.io.files", sink_class="PngSequenceSink",
                   description="numbered PNG files in a folder")
register_transport("null", "bridge.io.null", sink_class="NullSink",
                   description="discards frames (counts them)")
register_transport("http", "bridge.io.http_preview", sink_class="HttpPreviewSink",
                   description="MJPEG preview page for a browser / OBS Browser Source")

__all__ = [
    "Availability", "FrameSink", "FrameSource", "create_sink", "create_source", "is_available",
    "register_transport", "transport_kinds",
]
