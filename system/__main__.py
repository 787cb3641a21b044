from system.cli import main

main()
