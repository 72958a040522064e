"""The peerpxe application: command line, configuration files and composition of the actors."""
