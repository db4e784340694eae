
	Once upon%млL?((233s?8