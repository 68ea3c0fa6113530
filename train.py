"""`python train.py fit|validate|test|predict [-c configs/X.yaml] [--model.* --data.* --trainer.*]`."""

from litsft.cli import cli_main

if __name__ == "__main__":
    cli_main()
