"""Templates and static files of the group QC index (a package so they ship in wheels)."""
