"""The CLI's commands, one module per stage; cli.py puts them together and turns user errors
into one line."""
