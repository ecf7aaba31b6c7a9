from dnd.cli import app

app()
