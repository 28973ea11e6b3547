"""The sub-commands of fleetserve.cli: each module adds its command's flags and runs it. Nothing here is
imported by the layers below (fleet/, bench/, api/, engine/, sim/)."""
