"""Clean copies of the project for reproducing the reported numbers, and the race."""
