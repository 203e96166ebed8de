"""Scale out on Fly Machines: a dispatcher that gives each stay its own machine (see the README's "Scale out")."""
