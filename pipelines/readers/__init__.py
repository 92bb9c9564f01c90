"""One reader per on-disk format; each returns labelled images."""
