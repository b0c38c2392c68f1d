"""Reading the files mbtasks works on."""
