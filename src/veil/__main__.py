from veil.cli.main import main

main()
