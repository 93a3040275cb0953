"""Virtual E86 watches over bumble, simulated patients, replay of recorded vitals."""
