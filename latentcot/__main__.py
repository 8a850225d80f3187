from latentcot.cli import main

main()
