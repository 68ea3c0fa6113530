"""Lightning callbacks of litsft."""
