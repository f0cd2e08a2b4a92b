"""The multiscale byte model and its parts."""
