import ScoreCLI

Score.main()
