from reversib.cli import run

run()
