from mbp.cli import main

main()
