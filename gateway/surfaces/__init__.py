"""Protocol surfaces: thin modules that convert messages and hand routing to the router."""
