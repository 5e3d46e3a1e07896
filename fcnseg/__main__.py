from fcnseg.cli import main

raise SystemExit(main())
