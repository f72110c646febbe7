//! Portico plugins (being written).
