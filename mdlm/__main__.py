from mdlm.cli import main

raise SystemExit(main())
