"""`python -m llora_cli` runs the llora CLI."""

from llora_cli.cli.entry import main

main()
