from memtrack.cli import console

console()
