//! One store down at a time: what still works, and that everything comes
//! back by itself.
