//! QMQ wire protocol: frames, command codes and payload codecs, byte-compatible with the QMQ Java client.
