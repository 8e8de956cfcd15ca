from necst.cli import main

main()
