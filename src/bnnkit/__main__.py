from bnnkit.cli import run

run()
