"""TFX components and the Beam preprocessing they wrap."""
