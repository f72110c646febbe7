//! Portico anomaly (being written).
