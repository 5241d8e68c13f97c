"""One module per `mdlm` subcommand: parse arguments, resolve the profile, call the library, write outputs.

Each module provides ``add_arguments(parser)`` and ``main(args) -> int``. Commands never import each other;
glue that several commands share (the profile's models, judge, sampler settings) is in `common`.
"""
