//! The master's sync port (see the module docs of [`super`]).
