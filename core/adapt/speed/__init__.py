"""Speed-ups that keep results exact, entered by the loop through one seam (`adapt.speed.seam.SpeedUps`): CPU
dropout and allocator settings, compiling, the first-token trim and frozen-prefix caches."""
