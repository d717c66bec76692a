//! The `palaver-sim` command line (in progress).

fn main() {}
