//! Load prediction (being written).
