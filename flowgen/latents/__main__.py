from flowgen.latents.encode import main

raise SystemExit(main())
