//! Growing the last partition and its filesystem.
