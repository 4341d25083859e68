"""The ``llora`` command line (Typer + Rich). Other libraries' progress bars and warnings are switched off as it
starts, before any of them is imported (llora_cli/quiet.py; LLORA_DEBUG=1 keeps them)."""

from llora_cli.quiet import quiet_libraries

quiet_libraries()
