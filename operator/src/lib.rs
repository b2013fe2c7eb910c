//! The SensorFlow operator (being built: see issue 3).
