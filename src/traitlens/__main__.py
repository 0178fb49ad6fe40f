from traitlens.cli import main

raise SystemExit(main())
